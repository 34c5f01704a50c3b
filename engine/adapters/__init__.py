"""After training: host adapters on one base, check adapter folders, merge and compose them, batch
requests for different adapters together, and write the recipe for serving them with vLLM.

Imports the top of `engine/` and engine/model; never jobs/ or ui/.
"""
