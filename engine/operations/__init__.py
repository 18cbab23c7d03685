"""The operations: what staff, portals and other systems may do (exported by ``engine``)."""
