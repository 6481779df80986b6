"""The message as data: the lazy MIME view and its edits (message.py), the trace headers a
receiving MTA writes and reads (trace.py), and the message written out as eml or JSON
(export.py). No sockets, no journal, no sessions."""
