// The gpu-sim launcher (included after a kernels.cu by the generated translation unit of
// minignn/cuda/sim.py): run(kernel, ...) executes a whole grid on the calling CPU thread, block by
// block in the given order and thread by thread (forwards or backwards); signature(kernel) spells
// the kernel's parameter types so that Python can check every launch's arguments.
#pragma once

namespace minignn_sim {

template <class T> std::string type_name() {
    using U = typename std::remove_cv<T>::type;
    if (std::is_same<U, float>::value) return "float32";
    if (std::is_same<U, double>::value) return "float64";
    if (std::is_same<U, int>::value) return "int32";
    if (std::is_same<U, long long>::value || std::is_same<U, long>::value) return "int64";
    if (std::is_same<U, unsigned int>::value) return "uint32";
    if (std::is_same<U, unsigned long long>::value || std::is_same<U, unsigned long>::value) return "uint64";
    if (std::is_same<U, signed char>::value || std::is_same<U, char>::value) return "int8";
    if (std::is_same<U, unsigned char>::value) return "uint8";
    if (std::is_same<U, short>::value) return "int16";
    return "unsupported";
}

template <class T> std::string param_code() {
    if (std::is_pointer<T>::value) {
        using P = typename std::remove_pointer<T>::type;
        return std::string(std::is_const<P>::value ? "const " : "") + type_name<P>() + "*";
    }
    return type_name<T>();
}

template <class... A> const char* signature(void (*)(A...)) {
    static const std::string s = [] {
        std::string out;
        const std::string parts[] = {param_code<A>()..., ""};
        for (std::size_t i = 0; i < sizeof...(A); ++i) out += (i ? "," : "") + parts[i];
        return out;
    }();
    return s.c_str();
}

template <class... A, std::size_t... I>
inline void call(void (*k)(A...), void** args, std::index_sequence<I...>) {
    k(*static_cast<typename std::remove_reference<A>::type*>(args[I])...);
}

// dims: grid x, y, z, block x, y, z; order: the grid's blocks (linear index x + gx (y + gy z)) in
// the order to run them; reverse: run each block's threads from last to first.
template <class... A>
void run(void (*k)(A...), const long long* dims, const long long* order, int reverse, void** args) {
    gridDim = dim3(dims[0], dims[1], dims[2]);
    blockDim = dim3(dims[3], dims[4], dims[5]);
    const long long nb = dims[0] * dims[1] * dims[2], nt = dims[3] * dims[4] * dims[5];
    for (long long b = 0; b < nb; ++b) {
        const long long bi = order[b];
        blockIdx = dim3(bi % dims[0], (bi / dims[0]) % dims[1], bi / (dims[0] * dims[1]));
        for (long long t0 = 0; t0 < nt; ++t0) {
            const long long t = reverse ? nt - 1 - t0 : t0;
            threadIdx = dim3(t % dims[3], (t / dims[3]) % dims[4], t / (dims[3] * dims[4]));
            call(k, args, std::index_sequence_for<A...>{});
        }
    }
}

}  // namespace minignn_sim
