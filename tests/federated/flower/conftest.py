"""Flower tests run only where Flower is installed (``pip install -e '.[flower]'``)."""

import importlib.util

# without flwr these modules cannot even be imported: leave them out of the collection
collect_ignore_glob = [] if importlib.util.find_spec("flwr") else ["test_*.py"]
