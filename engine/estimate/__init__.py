"""What a plan costs before it runs: trainable parameters, memory term by term, time, and the combined estimate.

Imports engine/model and the top of `engine/`; never jobs/ or ui/.
"""
