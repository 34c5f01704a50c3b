"""A dataset's life before training: what a dataset string names (`ref`), file formats, chat templates, checks, the
demo skills.

Imports engine/model and the top of `engine/`; never jobs/ or ui/.
"""
