"""The egress proxy and its policy: what setup steps may reach, and the record of it.

Import the submodules directly (``bake.egress.policy``, ``.proxy``, ``.relay``,
``.dns``, ``.ledger``, ``.lockdown``); this package stays empty so that
importing it costs nothing.
"""
