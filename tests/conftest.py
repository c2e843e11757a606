import os

# Tests never touch the network, whatever the machine allows.
os.environ.setdefault("HEAR_CED_OFFLINE", "1")
