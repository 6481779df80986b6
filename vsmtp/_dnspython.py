"""What vsmtp asks of dnspython before any of it is used: no DNS over HTTPS.

vsmtp asks its DNS questions over UDP and TCP (its own resolver, or the one in
/etc/resolv.conf), never over HTTPS. dnspython turns DoH on whenever httpx2 and h2 are
installed (the test extra's parsedmarc installs them) and then imports that HTTP/2 stack with
dns.query: about a hundred modules and 4 MiB in every vsmtp process, for nothing. Turned off
here, before anything imports dns.query (vsmtp/__init__.py imports this module first).
"""

import dns._features

dns._features.force("doh", False)
