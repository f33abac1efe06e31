"""The customer's answer: signed links from every message to a page where the customer answers,
what an answer does to the case (answers.py, claims.py), and inbound mail (replies,
auto-replies, bounces) read back into the same answers.

`links.py` signs and verifies the per-message tokens; `message_links.py` writes them into each
customer message (the body's answer link, the header's one-click opt-out).
"""
