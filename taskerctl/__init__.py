"""taskerctl: the Tasker client and CLI."""
