"""`python -m merge_worker [--workers N]`: run N worker threads until SIGTERM/SIGINT
(merge_worker/runner.py)."""

from merge_worker.runner import main

if __name__ == "__main__":
    main()
