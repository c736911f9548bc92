"""pyinfra's config file for this project's deploys.

pyinfra's CLI loads it from the directory it runs in (run the deploys from the
checkout), before the inventory. It makes stage 0 happen before pyinfra connects
to any host: bad inventory data stops the run with one line naming the inventory
file, the line and the key, and nothing is contacted, not even over SSH
(``backupmx.core.context.check_before_connecting``).
"""

from pathlib import Path

from backupmx.core.pyinfra_glue import keep_bytecode, quick_operation_order

keep_bytecode()  # before the project's other modules are imported
quick_operation_order()

from backupmx.core.context import check_before_connecting, stage_zero  # noqa: E402

check_before_connecting(stage_zero, Path(__file__).resolve().parent / "deploys")
