"""``python -m taskerd``."""

from taskerd.server import main

if __name__ == "__main__":
    main()
