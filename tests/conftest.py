import os

# Tests never touch the network, whatever the machine allows.
os.environ.setdefault("HEAR_CED_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
