"""presel.selection: task-wise, cluster-based selection with an exact budget (PreSel step 2).

Heavy dependencies (faiss, scikit-learn, pyarrow) are imported inside the functions that use them.
"""

from presel.selection.budget import allocate
from presel.selection.select import (
    METHODS,
    SelectConfig,
    SelectionResult,
    select,
    select_to_dir,
    write_selection,
)

__all__ = ["METHODS", "SelectConfig", "SelectionResult", "allocate", "select", "select_to_dir", "write_selection"]
