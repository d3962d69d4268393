"""NVIDIA Triton Inference Server plumbing shared by the processes that touch it: the settings, the model
repository layout (written by the services that register models) and the server's command line (the launcher)."""
