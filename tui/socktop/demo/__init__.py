"""Demo scenario and socket builders: known TCP states on loopback, for the demo, tests and the benchmark."""

from .builders import Built, BuildError, Population, SocketFarm, build_population
from .scenario import DemoScenario, ScenarioError, run_demo

__all__ = ["Built", "BuildError", "DemoScenario", "Population", "ScenarioError", "SocketFarm",
           "build_population", "run_demo"]
