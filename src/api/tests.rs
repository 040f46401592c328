//! API tests through `tower::ServiceExt::oneshot`, with the loop running on the fake runtime.
