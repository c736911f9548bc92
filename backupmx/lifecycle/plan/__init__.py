"""The ``--dry`` plan as documents, and where they are written."""
