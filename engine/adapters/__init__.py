"""After training: host adapters on one base, check adapter folders, merge and compose them."""
