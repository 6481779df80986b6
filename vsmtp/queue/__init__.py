"""The event-sourced domain: journal events (events.py), the state they fold into (state.py),
pure decisions that produce events (policy.py), and the projection that follows the journal
(projection.py). Only projection.py does I/O.
"""
