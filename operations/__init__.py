"""pyinfra operations of backupmx (mail host: ``operations.mailhost``)."""
