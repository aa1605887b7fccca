"""Recovery Services vaults: creation and deployment, storage redundancy, storage backends,
vault credentials, Prepare infrastructure, soft delete."""
