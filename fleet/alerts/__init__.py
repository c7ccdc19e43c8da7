"""Alerts: rules over the fleet's state, delivered by signed webhook and by e-mail.

`models` holds channels (where alerts go), rules (what raises one), alerts (open or
resolved) and the delivery log; `rules` finds what is wrong now; `engine` opens and
resolves alerts and queues deliveries; `delivery` sends one (HMAC-signed JSON or
e-mail); `tasks` are the Celery side (periodic evaluation, retries with backoff);
`views` is the page to configure and test them.
"""
