from .single_file import FromOfficialCheckpointMixin

__all__ = ["FromOfficialCheckpointMixin"]
