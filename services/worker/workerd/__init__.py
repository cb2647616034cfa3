"""workerd: one inference engine pinned to one device, served over gRPC.

Run it with ``python -m workerd`` (or the ``workerd`` script). The engine
interface is :class:`workerd.domain.Engine`.
"""
