#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cdi_mover_fuzz::run(cdi_mover::fuzzing::qcow2_stream, data));
