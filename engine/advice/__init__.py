"""The rules table and what stands on it: recommendations before a run (and, next, the diagnosis after it).

Imports engine/model, engine/estimate and the top of `engine/`; never jobs/ or ui/.
"""
