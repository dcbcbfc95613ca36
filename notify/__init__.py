"""Notifications: alert transitions delivered to Alertmanager and to signed webhooks.

:mod:`notify.signing` signs webhook messages (Standard Webhooks), :mod:`notify.messages` builds
what each kind of channel receives, :mod:`notify.filters` decides which channels a transition
goes to and whether a silence mutes it, :mod:`notify.worker` is the delivery worker
(``eventops worker notify``) that fans the ``alert_events`` outbox out into deliveries and
sends them, in order per channel, with retries.
"""
