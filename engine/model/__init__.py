"""Where a base model comes from and what it is made of: the offline catalog, meta-device introspection, hub access,
the embedded default.

Imports only the top of `engine/` (plan, errors, paths, units); never jobs/ or ui/.
"""
