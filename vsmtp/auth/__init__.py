"""Sender authentication: SPF (spf.py, pyspf), DKIM (dkim.py, dkimpy), ARC (arc.py),
DMARC (dmarc.py) and its aggregate reports (report.py), and the results as rules, the
journal and the message's headers see them (results.py).

Pure where it can be: nothing here asks the DNS. The checks in net/checks/ look the records
up on trio and hand them in; the libraries that are blocking run in worker threads.
"""
