"""The customer's answer: signed links from every message to a page where the customer answers,
what an answer does to the case (answers.py, claims.py), and inbound mail (replies,
auto-replies, bounces) read back into the same answers.

`links.py` signs and verifies the per-message tokens.
"""
