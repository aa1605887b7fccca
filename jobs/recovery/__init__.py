"""Recover Data: the portal's restore wizard, browsing and searching through the agent."""
