"""The portal's views, one module per area; each is a thin door into portal.services."""
