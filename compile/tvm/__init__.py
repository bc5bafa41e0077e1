"""The TVM back-end: import (incl. int4 QDQ), integer lowering, tuning, targets, export."""
