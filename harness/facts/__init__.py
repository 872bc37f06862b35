"""Facts about the machine and the build: recorded with every result document
(``machine``) and shown by ``chainbench version`` (``version``)."""
