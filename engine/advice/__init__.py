"""The rules table and what stands on it: the memory-fitting ladder, recommendations before a run (and, next, the
diagnosis after it).

Imports engine/model, engine/estimate and the top of `engine/`; never jobs/ or ui/.
"""
