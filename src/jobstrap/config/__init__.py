"""What the user asked for: site profiles, their one settings schema, units
(memory, walltime), and where the shipped templates and profiles are.
"""
