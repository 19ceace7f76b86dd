"""The suite's socktop runs read the test's own network namespace unless a test says otherwise.

As root `socktop` reads every network namespace by default; the tests
compare its counts with `ss` run in their own namespace, and other
namespaces on the machine (other test runs, containers) would count too.
Tests of the namespaces feature pass --netns, or clear the variable.
"""

import os

os.environ["SOCKTOP_NETNS"] = "self"
