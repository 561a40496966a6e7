//! The whole conformance suite against the in-memory reference dataplane.

use svcroute_conformance::memory::MemoryBackend;

svcroute_conformance::conformance_tests!(MemoryBackend);
