"""The egress proxy and its policy: what setup steps may reach, and the record of it.

Import the submodules directly (``bake.egress.policy``, ``.proxy``, ``.ledger``);
this package stays empty so that importing it costs nothing.
"""
