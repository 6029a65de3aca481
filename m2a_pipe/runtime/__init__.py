"""Runners: the local runner (threads and bounded queues) and, in its own module, the Ray runner."""
