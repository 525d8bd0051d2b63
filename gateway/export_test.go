package gateway

// Test helpers of package gateway that the external tests (package gateway_test) share.

// RejectedByReason reads the protection tier's rejected counter, by reason.
var RejectedByReason = rejectedByReason
