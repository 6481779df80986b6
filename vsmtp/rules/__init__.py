"""The rules language: what an administrator's rules file imports.

    from vsmtp.rules import rule, accept, deny, reject, faccept, quarantine, NEXT
    from vsmtp.rules import Networks, Domains, Regex, FileSet, FileMap

See docs/rules.md. A rule is a function of one argument, the Context (context.py), decorated
with its stage; it returns a verdict (verdicts.py), or None for no opinion.
"""

from __future__ import annotations

from ..mail.message import Message
from .context import Context
from .loader import STAGES, RulesError, RulesFile, rule
from .objects import Domains, FileMap, FileSet, Networks, Regex
from .verdicts import NEXT, Verdict, accept, deny, faccept, quarantine, reject

__all__ = [
    "NEXT",
    "STAGES",
    "Context",
    "Domains",
    "FileMap",
    "FileSet",
    "Message",
    "Networks",
    "Regex",
    "RulesError",
    "RulesFile",
    "Verdict",
    "accept",
    "deny",
    "faccept",
    "quarantine",
    "reject",
    "rule",
]
