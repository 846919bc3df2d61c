"""The flag groups the storage procedures check; the flags themselves are the protocol's."""

from __future__ import annotations

from virtvol.protocol.constants import ListPoolsFlags as ListPoolsFlags
from virtvol.protocol.constants import PoolBuildFlags as PoolBuildFlags
from virtvol.protocol.constants import PoolCreateFlags as PoolCreateFlags
from virtvol.protocol.constants import PoolDefineFlags as PoolDefineFlags
from virtvol.protocol.constants import PoolDeleteFlags as PoolDeleteFlags
from virtvol.protocol.constants import PoolXMLFlags as PoolXMLFlags
from virtvol.protocol.constants import VolCreateFlags as VolCreateFlags
from virtvol.protocol.constants import VolDeleteFlags as VolDeleteFlags
from virtvol.protocol.constants import VolInfoFlags as VolInfoFlags
from virtvol.protocol.constants import VolResizeFlags as VolResizeFlags
from virtvol.protocol.constants import VolStreamFlags as VolStreamFlags

LIST_POOLS_ACTIVITY = ListPoolsFlags.ACTIVE | ListPoolsFlags.INACTIVE
LIST_POOLS_PERSISTENCE = ListPoolsFlags.PERSISTENT | ListPoolsFlags.TRANSIENT
LIST_POOLS_AUTOSTART = ListPoolsFlags.AUTOSTART | ListPoolsFlags.NO_AUTOSTART
LIST_POOLS_TYPES = ListPoolsFlags(((1 << 20) - 1) & ~((1 << 6) - 1))
LIST_POOLS_ALL = (
    LIST_POOLS_ACTIVITY | LIST_POOLS_PERSISTENCE | LIST_POOLS_AUTOSTART | LIST_POOLS_TYPES
)
