"""pyinfra facts of backupmx (mail host: ``facts.mailhost``)."""
