"""Suite-wide test settings.

Under pytest-xdist each worker gets one intra-op thread so the two CI
workers do not oversubscribe the two cores (tests never measure time).
"""
import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TVM_NUM_THREADS"):
        os.environ.setdefault(var, "1")
os.environ.setdefault("EDGEKIT_PROGRESS", "0")
