"""taskerd: the Tasker daemon."""
