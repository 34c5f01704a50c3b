"""Where a base model comes from and what it is made of: the offline catalog, meta-device introspection, hub access,
the embedded default.

Imports the top of `engine/` (plan, errors, paths, units) and, to give the embedded default its chat
template when its file has none, `engine.data.chat`; never jobs/ or ui/.
"""
