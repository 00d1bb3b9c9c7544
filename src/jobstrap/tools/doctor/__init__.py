"""``jobstrap doctor``: site checks, a probe job, and what a failure means.
"""
