"""Hydra's standard way for a package to ship config: this SearchPathPlugin puts the
package's conf/ on Hydra's search path, so ``mining=random_hard`` finds its YAML."""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class TripletlabPluginExampleSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(
            provider="tripletlab-plugin-example", path="pkg://tripletlab_plugin_example/conf"
        )
